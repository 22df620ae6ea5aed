"""Pure pieces with no Twisted: settings, units, paths, signatures, refusals, config."""
