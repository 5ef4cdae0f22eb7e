"""Flow-map workbench: analytic flows beside neural flow maps, behind one contract.

Time convention everywhere: t = 0 is the base (noise), t = 1 is the data; times come first,
ordered (s, t) = (from, to), then the state.
"""

__version__ = "0.1.0"
