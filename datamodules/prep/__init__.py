"""The ``sfvgen data`` tools that make shard sets: ``build`` (videos + action file), ``convert`` (recording layouts
-> action file), ``record`` (ViZDoom episodes), ``latent_cache`` (``cache-latents``), ``bench`` (``sfvgen bench
data``) and ``cli`` (the command line)."""
