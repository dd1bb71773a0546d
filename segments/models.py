"""segments models arrive with their issue."""
