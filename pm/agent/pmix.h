/*
 * The part of the OpenPMIx 4.x server API that pm.agent.pmix_lib calls, for
 * cffi in ABI mode (ffi.cdef + ffi.dlopen): no compiler runs, so this file
 * is the whole contract with libpmix.so.2.  Layouts are those of
 * <pmix_common.h> and <pmix_server.h> of PMIx 4.2 on LP64 (checked by a
 * test against the installed headers when a compiler is present):
 * sizeof(pmix_value_t) == 32, sizeof(pmix_info_t) == 552,
 * sizeof(pmix_proc_t) == 260, sizeof(pmix_server_module_t) == 224.
 */

typedef int pmix_status_t;
typedef uint32_t pmix_rank_t;
typedef uint16_t pmix_data_type_t;
typedef uint32_t pmix_info_directives_t;
typedef char pmix_nspace_t[256];
typedef char pmix_key_t[512];

typedef struct pmix_proc {
    pmix_nspace_t nspace;
    pmix_rank_t rank;
} pmix_proc_t;

typedef struct pmix_byte_object {
    char *bytes;
    size_t size;
} pmix_byte_object_t;

typedef struct pmix_data_array {
    pmix_data_type_t type;
    size_t size;
    void *array;
} pmix_data_array_t;

/* The union holds the members read or written here; envar (two pointers and
 * a char) is the largest member and gives the union its 24 bytes. */
typedef struct pmix_value {
    pmix_data_type_t type;
    union {
        bool flag;
        uint8_t byte;
        char *string;
        size_t size;
        int integer;
        int32_t int32;
        uint16_t uint16;
        uint32_t uint32;
        uint64_t uint64;
        pmix_status_t status;
        pmix_rank_t rank;
        pmix_proc_t *proc;
        pmix_byte_object_t bo;
        pmix_data_array_t *darray;
        void *ptr;
        struct { char *envar; char *value; char separator; } envar;
    } data;
} pmix_value_t;

typedef struct pmix_info {
    pmix_key_t key;
    pmix_info_directives_t flags;
    pmix_value_t value;
} pmix_info_t;

typedef struct pmix_app {
    char *cmd;
    char **argv;
    char **env;
    char *cwd;
    int maxprocs;
    pmix_info_t *info;
    size_t ninfo;
} pmix_app_t;

typedef struct pmix_pdata {
    pmix_proc_t proc;
    pmix_key_t key;
    pmix_value_t value;
} pmix_pdata_t;

typedef void (*pmix_op_cbfunc_t)(pmix_status_t status, void *cbdata);
typedef void (*pmix_release_cbfunc_t)(void *cbdata);
typedef void (*pmix_modex_cbfunc_t)(pmix_status_t status, const char *data, size_t ndata,
                                    void *cbdata, pmix_release_cbfunc_t release_fn,
                                    void *release_cbdata);
typedef void (*pmix_lookup_cbfunc_t)(pmix_status_t status, pmix_pdata_t data[], size_t ndata,
                                     void *cbdata);
typedef void (*pmix_spawn_cbfunc_t)(pmix_status_t status, pmix_nspace_t nspace, void *cbdata);
typedef void (*pmix_dmodex_response_fn_t)(pmix_status_t status, char *data, size_t sz,
                                          void *cbdata);
typedef void (*pmix_info_cbfunc_t)(pmix_status_t status, pmix_info_t *info, size_t ninfo,
                                   void *cbdata, pmix_release_cbfunc_t release_fn,
                                   void *release_cbdata);

typedef pmix_status_t (*pmix_server_client_connected_fn_t)(
    const pmix_proc_t *proc, void *server_object, pmix_op_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_client_finalized_fn_t)(
    const pmix_proc_t *proc, void *server_object, pmix_op_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_abort_fn_t)(
    const pmix_proc_t *proc, void *server_object, int status, const char msg[],
    pmix_proc_t procs[], size_t nprocs, pmix_op_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_fencenb_fn_t)(
    const pmix_proc_t procs[], size_t nprocs, const pmix_info_t info[], size_t ninfo,
    char *data, size_t ndata, pmix_modex_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_dmodex_req_fn_t)(
    const pmix_proc_t *proc, const pmix_info_t info[], size_t ninfo,
    pmix_modex_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_publish_fn_t)(
    const pmix_proc_t *proc, const pmix_info_t info[], size_t ninfo,
    pmix_op_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_lookup_fn_t)(
    const pmix_proc_t *proc, char **keys, const pmix_info_t info[], size_t ninfo,
    pmix_lookup_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_unpublish_fn_t)(
    const pmix_proc_t *proc, char **keys, const pmix_info_t info[], size_t ninfo,
    pmix_op_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_spawn_fn_t)(
    const pmix_proc_t *proc, const pmix_info_t job_info[], size_t ninfo,
    const pmix_app_t apps[], size_t napps, pmix_spawn_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_connect_fn_t)(
    const pmix_proc_t procs[], size_t nprocs, const pmix_info_t info[], size_t ninfo,
    pmix_op_cbfunc_t cbfunc, void *cbdata);
typedef pmix_status_t (*pmix_server_job_control_fn_t)(
    const pmix_proc_t *requestor, const pmix_proc_t targets[], size_t ntargets,
    const pmix_info_t directives[], size_t ndirs, pmix_info_cbfunc_t cbfunc, void *cbdata);
typedef void (*pmix_server_log_fn_t)(
    const pmix_proc_t *client, const pmix_info_t data[], size_t ndata,
    const pmix_info_t directives[], size_t ndirs, pmix_op_cbfunc_t cbfunc, void *cbdata);
typedef enum { PMIX_GROUP_CONSTRUCT, PMIX_GROUP_DESTRUCT } pmix_group_operation_t;
typedef pmix_status_t (*pmix_server_grp_fn_t)(
    pmix_group_operation_t op, char grp[], const pmix_proc_t procs[], size_t nprocs,
    const pmix_info_t directives[], size_t ndirs, pmix_info_cbfunc_t cbfunc, void *cbdata);

/* Slots this module leaves NULL are declared as plain pointers. */
typedef struct pmix_server_module {
    pmix_server_client_connected_fn_t client_connected;
    pmix_server_client_finalized_fn_t client_finalized;
    pmix_server_abort_fn_t abort;
    pmix_server_fencenb_fn_t fence_nb;
    pmix_server_dmodex_req_fn_t direct_modex;
    pmix_server_publish_fn_t publish;
    pmix_server_lookup_fn_t lookup;
    pmix_server_unpublish_fn_t unpublish;
    pmix_server_spawn_fn_t spawn;
    pmix_server_connect_fn_t connect;
    pmix_server_connect_fn_t disconnect;  /* the same signature */
    void *register_events;
    void *deregister_events;
    void *listener;
    void *notify_event;
    void *query;
    void *tool_connected;
    pmix_server_log_fn_t log;
    void *allocate;
    pmix_server_job_control_fn_t job_control;
    void *monitor;
    void *get_credential;
    void *validate_credential;
    void *iof_pull;
    void *push_stdin;
    pmix_server_grp_fn_t group;
    void *fabric;
    void *client_connected2;
    /* PMIx 5 appends slots: room so a newer library reads NULLs. */
    void *reserved[16];
} pmix_server_module_t;

const char *PMIx_Get_version(void);
const char *PMIx_Error_string(pmix_status_t status);
pmix_status_t PMIx_server_init(pmix_server_module_t *module, pmix_info_t info[], size_t ninfo);
pmix_status_t PMIx_server_finalize(void);
pmix_status_t PMIx_generate_regex(const char *input, char **regex);
pmix_status_t PMIx_generate_ppn(const char *input, char **ppn);
pmix_status_t PMIx_server_register_nspace(const pmix_nspace_t nspace, int nlocalprocs,
                                          pmix_info_t info[], size_t ninfo,
                                          pmix_op_cbfunc_t cbfunc, void *cbdata);
void PMIx_server_deregister_nspace(const pmix_nspace_t nspace, pmix_op_cbfunc_t cbfunc,
                                   void *cbdata);
pmix_status_t PMIx_server_register_client(const pmix_proc_t *proc, uint32_t uid, uint32_t gid,
                                          void *server_object, pmix_op_cbfunc_t cbfunc,
                                          void *cbdata);
void PMIx_server_deregister_client(const pmix_proc_t *proc, pmix_op_cbfunc_t cbfunc,
                                   void *cbdata);
pmix_status_t PMIx_server_setup_fork(const pmix_proc_t *proc, char ***env);
pmix_status_t PMIx_server_dmodex_request(const pmix_proc_t *proc,
                                         pmix_dmodex_response_fn_t cbfunc, void *cbdata);

void free(void *ptr);

/* pidfd_getfd(2) through syscall(2): the ranks' PMIx sockets get TCP_NODELAY (pm.agent.pmix_upcalls). */
long syscall(long number, ...);
/* The group endpoint data handed to the library is freed by it (pm.agent.pmix_upcalls). */
void *malloc(size_t size);
