"""Model artifacts on the device: manifests, precision recipes, engines."""
