"""Command-line entry points (also used by ``training_scripts/``): parse, build, call the library."""
