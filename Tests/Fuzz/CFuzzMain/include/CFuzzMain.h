// Intentionally empty: this target only supplies a weak main (see main.c).
