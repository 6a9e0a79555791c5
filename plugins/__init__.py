"""Built-in plugins that are neither defenses nor attacks: datasets, architectures, metrics, reporters."""
