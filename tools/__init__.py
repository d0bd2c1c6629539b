"""Tools that write the project's docs; not part of the runtime package."""
