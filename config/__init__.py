"""The floor under every other layer: settings, topic catalog, site, policy and the shipped assets."""
