"""What people use: the command line and the desktop window, both built on ``engine.pipeline``."""
