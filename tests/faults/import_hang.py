"""A module whose import never finishes."""

import time

while True:
    time.sleep(3600)
