"""Image geometry between the radiograph and the network (pure numpy)."""
