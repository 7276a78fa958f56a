"""Who runs a model: ``local`` (its runner in this process); ``replicate`` (relay) later."""
