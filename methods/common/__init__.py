"""Pieces shared by several methods. Each lives here once; methods import them."""
