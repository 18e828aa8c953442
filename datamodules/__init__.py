"""LightningDataModules and shard readers/writers (installed as ``slowfast_vgen.datamodules``)."""
