"""Build script for crossview_ros (ament_python).

One distribution serves two installs: `colcon build` in a ROS 2 workspace (scripts under
lib/crossview_ros/, data files under share/) and `pip install` in a plain venv with the ROS 2
wheels from PyPI (the `ros` extra). The offline training code in training/ installs as
`crossview_training`; nothing installs a generic top-level name.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "crossview_ros"

runtime_requires = [
    "numpy>=1.24",
    "scipy>=1.10",
    "pyproj>=3.5",
    "rasterio>=1.3",
    "mercantile>=1.2",  # XYZ tile folders: web-map tile bounds
    "pyarrow>=12",
    "opencv-python-headless>=4.8",
    "simplejpeg>=1.7",  # strict JPEG decoding: libjpeg's corrupt-data warnings refuse a frame
    "tqdm>=4.60",
    "PyYAML>=6",
    "faiss-cpu>=1.7.4",
    "numba>=0.59",
    "rosbags>=0.10",
    "onnxruntime>=1.16",
]

extras = {
    # The ROS 2 Kilted client library and messages as wheels; a ROS 2 install provides these
    # through package.xml instead, so they are not hard requirements.
    "ros": [
        "ros-rclpy",
        "ros-rmw-fastrtps-cpp",
        "ros-sensor-msgs",
        "ros-geometry-msgs",
        "ros-nav-msgs",
        "ros-diagnostic-msgs",
        "ros-std-msgs",
    ],
    "train": [
        "torch>=2.11",
        "torchvision>=0.26",
        "timm>=1.0",
        "onnx>=1.15",
    ],
    # Replay evaluation: the fused track's EKF (filterpy) and the report's plots (matplotlib).
    "replay": [
        "filterpy>=1.4.5",
        "matplotlib>=3.7",
    ],
    "test": [
        "pytest>=7",
        "hypothesis>=6",
        "geographiclib>=2.0",
        # the checks CI runs beside the tests: the layers in .importlinter, the rules in ruff.toml
        "import-linter>=2.1",
        "ruff>=0.5",
    ],
}

setup(
    name=PACKAGE,
    version="0.1.0",
    description="GNSS correction by ground-to-aerial image matching for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"])
    + ["crossview_training"]
    + [f"crossview_training.{p}" for p in find_packages(where="training")],
    package_dir={"crossview_training": "training"},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools", *runtime_requires],
    extras_require=extras,
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "crossview-tiles = crossview_ros.tiles_cli:main",
            "crossview-localize = crossview_ros.localize_cli:main",
            "crossview-sim = crossview_ros.sim.cli:main",
            "crossview-train = crossview_training.train:main",
            "crossview-eval = crossview_training.evaluate:main",
            "crossview-export = crossview_training.export:main",
            "crossview-replay = crossview_ros.replay.cli:main",
            "crossview-demo = crossview_training.demo_cli:main",
            "crossview-walks = crossview_training.walks:main",
            "crossview-dataset = crossview_training.bag_dataset:main",
            "localize_node = crossview_ros.nodes.localize_node:main",
        ],
    },
)
