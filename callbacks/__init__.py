"""Lightning callbacks (installed as ``slowfast_vgen.callbacks``)."""
