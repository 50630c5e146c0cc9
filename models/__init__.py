"""Model management: the weight files (layout, URLs, sha256), fetching them, the FaRL network
shared by its loader and the tiny test writer, and the tiny random test models. Knows the tiers'
architectures; imports only ``shared``."""
