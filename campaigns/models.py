"""campaigns models arrive with their issue."""
