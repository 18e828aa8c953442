"""The ``sfvgen data`` tools that make shard sets: ``build`` (videos + action file), ``convert`` (recording layouts
-> action file), ``record`` (ViZDoom episodes),
``record_maze`` (Memory Maze episodes), ``bench`` (``sfvgen bench data``) and ``cli`` (the command line;
``cache-latents`` runs :mod:`slowfast_vgen.datamodules.shards.latent_cache`, which training reads too)."""
