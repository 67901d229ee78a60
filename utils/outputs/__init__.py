"""What a run writes for people and a line's software besides the 4-panel pictures (utils/visualize.py):
maps.py, the per-image anomaly map, defect mask and overlay; page.py (+ page.html), the results page index.html."""
