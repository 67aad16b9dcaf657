"""Read a config file the way mmprune's tools accept it."""


def load_config(path: str):
    """Load a config file, accepting the ``mmdet::`` package prefix."""
    from mmengine.config import Config
    if '::' in path:
        from mmengine.hub import get_config
        return get_config(path)
    return Config.fromfile(path)
