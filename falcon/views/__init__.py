"""Presentation: what only formats the library's numbers for display (figures, SVG charts, tables, prose).

The library (everything outside this folder) never imports from here; the app's pages and the CLI do.
Nothing here imports streamlit either.
"""
