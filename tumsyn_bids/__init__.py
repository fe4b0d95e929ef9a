"""tumsyn-bids: a BIDS App around TUMSyn, text-guided universal brain MRI synthesis."""

__version__ = "0.1.0"
