"""Adapters to training frameworks; each is imported on its own (`hcl_array.integrations.lightning`) and needs
its framework installed (extras: `pip install 'hcl-array[lightning]'`). Importing this package imports none."""
