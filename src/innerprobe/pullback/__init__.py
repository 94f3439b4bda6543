"""innerprobe.pullback"""
