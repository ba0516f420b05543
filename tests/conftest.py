from .netns import netns, netns_pair  # noqa: F401  (namespace fixtures for every test module)
