"""Built-in defenses: one module per defense family, each registered through an `untunable` entry point."""
