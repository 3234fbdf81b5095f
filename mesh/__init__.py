"""shop-mesh runtime: settings, server bootstrap, discovery, client, events, saga."""
