"""Built-in attacks: one module per attack family, each registered through an `untunable` entry point."""
