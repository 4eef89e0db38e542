"""Writers that turn Attributions into files and records, one at a time."""
