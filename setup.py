from setuptools import find_packages, setup

# Runtime dependencies are pinned in requirements/pins.txt and installed by
# tools/setup_env.sh (mmcv needs a special build); here we only declare them
# loosely so that `pip install -e .` never resolves another torch.
setup(
    name='mmprune',
    version=open('mmprune/version.py').read().split("'")[1],
    description='Detection-focused channel pruning for MMDetection 3.x',
    packages=find_packages(include=['mmprune', 'mmprune.*']),
    include_package_data=True,
    python_requires='>=3.9',
    install_requires=[],
)
