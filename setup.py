"""Packaging for reid_nb: everything is read from settings.ini (nbdev 2 layout)."""
from configparser import ConfigParser

import shutil
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini")
cfg = cfg["DEFAULT"]

class BuildPy(build_py):
    "Ship the task notebooks and the specs inside the package too (reid_nb/tasks, reid_nb/params): a wheel has no nbs/."
    def run(self):
        super().run()
        for src, dst, pattern in (("nbs/tasks", "tasks", "*.ipynb"), ("params", "params", "*.yaml")):
            out = Path(self.build_lib, cfg["lib_name"], dst)
            out.mkdir(parents=True, exist_ok=True)
            for f in Path(src).glob(pattern): shutil.copy2(f, out / f.name)


setuptools.setup(
    cmdclass={"build_py": BuildPy},
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    license="Apache-2.0",
    python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=["reid_nb", "reid_nb.*"]),
    include_package_data=True,
    install_requires=cfg["requirements"].split(),
    extras_require={"dev": cfg["dev_requirements"].split()},
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"],
    },
    zip_safe=False,
)
