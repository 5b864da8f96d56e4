"""Data layer: dataset registry, downloads, native-format parsers, synthetic demo data, manifests."""
