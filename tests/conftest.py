import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall badly on a shared 2-core machine
os.environ["GFBENCH_NO_DOWNLOAD"] = "1"  # tests never download; the download tests inject a fake downloader
