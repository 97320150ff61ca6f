/*
 * The embedded CPython of the preload library: one interpreter per host process, started on
 * first need, running sgxemu.preload.runtime. Kept apart from the interposers because Python.h
 * forces _FILE_OFFSET_BITS=64, which would rename open/stat/mmap to their *64 forms there.
 *
 * Threads: each host thread that calls in gets one persistent PyThreadState (made by
 * PyGILState_Ensure the first time, then parked with PyEval_SaveThread), so every later call is
 * a plain GIL hand-over. The GIL is never held while host code runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sgxemu_preload.h"

#ifndef SGXEMU_DEFAULT_PYTHON
#define SGXEMU_DEFAULT_PYTHON "python3"
#endif

static pthread_once_t py_once = PTHREAD_ONCE_INIT;
static int py_ok;			/* the runtime is up */
static PyObject *py_runtime;		/* sgxemu.preload.runtime.Runtime */
static PyObject *py_enclu;		/* its bound enclu method */
static __thread PyThreadState *py_tstate;
static __thread int py_depth;		/* GIL held by this thread through us */
static pthread_key_t py_key;

static void py_thread_gone(void *unused)
{
	(void)unused;
	/* The thread exits: let go of its thread state (it holds no Python objects of ours). */
	if (py_tstate && py_ok) {
		PyEval_RestoreThread(py_tstate);
		PyThreadState_Clear(py_tstate);
		PyThreadState_DeleteCurrent();
		py_tstate = NULL;
	}
}

static void py_acquire(void)
{
	if (py_depth++)
		return;
	if (py_tstate) {
		PyEval_RestoreThread(py_tstate);
		return;
	}
	PyGILState_Ensure();
	py_tstate = PyThreadState_Get();
	pthread_setspecific(py_key, (void *)1);
}

static void py_release(void)
{
	if (--py_depth)
		return;
	py_tstate = PyEval_SaveThread();
}

static void py_init(void)
{
	PyStatus status;
	PyConfig config;
	const char *exe = getenv("SGXEMU_PYTHON");

	if (!exe || !*exe)
		exe = SGXEMU_DEFAULT_PYTHON;
	pthread_key_create(&py_key, py_thread_gone);
	PyConfig_InitIsolatedConfig(&config);
	config.install_signal_handlers = 0;
	config.site_import = 1;
	config.pathconfig_warnings = 0;
	config.parse_argv = 0;
	status = PyConfig_SetBytesString(&config, &config.program_name, exe);
	if (!PyStatus_Exception(status))
		status = PyConfig_SetBytesString(&config, &config.executable, exe);
	if (!PyStatus_Exception(status))
		status = Py_InitializeFromConfig(&config);
	PyConfig_Clear(&config);
	if (PyStatus_Exception(status)) {
		sgxemu_log("cannot start the embedded Python (%s): %s", exe,
			   status.err_msg ? status.err_msg : "unknown error");
		return;
	}
	if (getenv("SGXEMU_VERBOSE") && atoi(getenv("SGXEMU_VERBOSE")) >= 2)
		sgxemu_log("python started");
	PyObject *mod = PyImport_ImportModule("sgxemu.preload.runtime");
	if (getenv("SGXEMU_VERBOSE") && atoi(getenv("SGXEMU_VERBOSE")) >= 2)
		sgxemu_log("runtime imported");
	PyObject *rt = NULL;
	if (mod) {
		rt = PyObject_CallMethod(mod, "bootstrap", "K",
					 (unsigned long long)(uintptr_t)&sgxemu_api_table);
		Py_DECREF(mod);
	}
	if (!rt) {
		PyErr_Print();
		sgxemu_log("the sgxemu runtime did not start (Python %s)", exe);
		py_tstate = PyEval_SaveThread();
		return;
	}
	py_runtime = rt;
	py_enclu = PyObject_GetAttrString(rt, "enclu");
	if (!py_enclu) {
		PyErr_Print();
		py_tstate = PyEval_SaveThread();
		return;
	}
	py_ok = 1;
	py_tstate = PyEval_SaveThread();
}

int sgxemu_py_ensure(void)
{
	if (!py_ok) {
		/* CPUIDs the interpreter and its libraries run while starting are its own business
		 * (and a trap into a half-started runtime would deadlock): not emulated. */
		int faulting = sgxemu_cpuid_faulting(0);
		pthread_once(&py_once, py_init);
		if (faulting)
			sgxemu_cpuid_faulting(1);
	}
	return py_ok;
}

int sgxemu_py_active(void)
{
	return py_ok;
}

/* Call runtime.<method>(*args): an int result, or -EIO when Python raised. */
long sgxemu_py_call(const char *method, const char *fmt, ...)
{
	va_list ap;
	long ret = -EIO;

	if (!sgxemu_py_ensure())
		return -ENOSYS;
	py_acquire();
	va_start(ap, fmt);
	PyObject *args = Py_VaBuildValue(fmt, ap);
	va_end(ap);
	PyObject *fn = args ? PyObject_GetAttrString(py_runtime, method) : NULL;
	PyObject *res = fn ? PyObject_CallObject(fn, args) : NULL;
	if (res) {
		ret = PyLong_AsLong(res);
		if (ret == -1 && PyErr_Occurred()) {
			PyErr_Print();
			ret = -EIO;
		}
	} else {
		PyErr_Print();
	}
	Py_XDECREF(res);
	Py_XDECREF(fn);
	Py_XDECREF(args);
	py_release();
	return ret;
}

int sgxemu_py_call_enclu(struct sgxemu_block *b)
{
	long ret;

	if (!sgxemu_py_ensure())
		sgxemu_die("ENCLU executed but the sgxemu runtime is not running");
	py_acquire();
	PyObject *arg = PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)b);
	PyObject *res = arg ? PyObject_CallOneArg(py_enclu, arg) : NULL;
	Py_XDECREF(arg);
	if (!res) {
		PyErr_Print();
		py_release();
		sgxemu_die("emulated ENCLU failed (an emulator error, see the traceback above)");
	}
	ret = PyLong_AsLong(res);
	Py_DECREF(res);
	py_release();
	return (int)ret;
}

/* fork() by the host: the child continues with a copy of the interpreter (and the machine). */
void sgxemu_py_atfork_prepare(void)
{
	if (!py_ok)
		return;
	py_acquire();
	PyOS_BeforeFork();
}

void sgxemu_py_atfork_parent(void)
{
	if (!py_ok)
		return;
	PyOS_AfterFork_Parent();
	py_release();
}

void sgxemu_py_atfork_child(void)
{
	if (!py_ok)
		return;
	PyOS_AfterFork_Child();	/* runs os.register_at_fork(after_in_child=...) hooks */
	py_release();
}

/*
 * The process exits through exit() or a return from main: with SGXEMU_STATS set (sgxemu exec
 * --json), the runtime writes its counters. Only when asked, and only if the emulator started:
 * an ordinary exit takes no lock and runs no Python.
 */
__attribute__((destructor)) static void py_at_exit(void)
{
	const char *v = getenv("SGXEMU_STATS");

	if (!py_ok || !v || !*v)
		return;
	(void)sgxemu_py_call("at_exit", "()");
}
