"""The mutating admission webhook: route GPU pods to our scheduler and fill HAMi's defaults."""
