"""The `hcl` command line: a thin shell over the library (no computation lives here)."""
