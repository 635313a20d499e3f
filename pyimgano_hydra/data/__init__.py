"""Sample records, image IO and one module per dataset layout."""

