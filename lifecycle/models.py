"""lifecycle models arrive with their issue."""
