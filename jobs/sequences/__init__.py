"""Domain transforms over event sequences: sessionization, sequence building and rendering."""
