"""Model builders, one module per architecture, in the style of keras.applications."""
