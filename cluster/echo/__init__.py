"""The automatic echo factor: a pure rule (`policy`) and the per-run controller actor that
applies it (`controller`)."""
