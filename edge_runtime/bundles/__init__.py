"""A bundle's life on the board: its manifest, its pack, its signature, resolving a path or a pack
into a loadable :class:`~edge_runtime.bundles.manifest.Bundle`, and the store that keeps them."""
