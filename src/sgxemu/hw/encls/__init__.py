"""ENCLS leaves (ring 0), one module per leaf."""
