"""The library on disk: the SQLite database and the folder of memory files."""
