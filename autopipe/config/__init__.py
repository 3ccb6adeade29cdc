"""Configuration: site files (where work runs) and run files (what to do)."""

from autopipe.config.run import RunConfig, load_run
from autopipe.config.site import SiteConfig, load_site

__all__ = ["RunConfig", "SiteConfig", "load_run", "load_site"]
