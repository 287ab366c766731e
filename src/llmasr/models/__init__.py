"""Named offline models: each name resolves to weights shipped inside a package (`llmasr.models.registry`)."""
