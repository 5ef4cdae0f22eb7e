"""Figures and tables from run directories. One function per figure: data in, Figure out."""
