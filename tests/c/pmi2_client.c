/*
 * A PMI-2 client built on Slurm's libpmi2, used to check a PMI-2 server.
 *
 * Build: cc -O1 -o pmi2_client pmi2_client.c -lpmi2
 *
 * Normal mode (no argument) runs, checking every answer itself:
 *   PMI2_Init, PMI2_Job_GetId, PMI2_KVS_Put("key-<rank>", value with '=' and ';'),
 *   PMI2_KVS_Fence, PMI2_KVS_Get of every other rank's key (with srcid), of
 *   its own key with a NULL job id, of a key nobody put (must fail), PMI2_Info_GetJobAttr of
 *   PMI_process_mapping, universeSize and a missing attribute, node attributes
 *   (local rank 0 puts, the others wait for it), name publish/lookup/unpublish
 *   (rank 0), PMIX_Ring when the library has it, PMI2_Finalize.  It prints "OK rank=<r>" last and exits 0, or
 *   prints "FAIL rank=<r>: <why>" on stderr and exits 1.
 *
 * "abort" mode: PMI2_Init, then PMI2_Abort(1, "abort; from <rank>").
 *
 * Environment it checks against (all optional): PMI_RANK, PMI_SIZE,
 * MPI_LOCALRANKID (default 0), EXPECT_APPNUM, EXPECT_JOBID,
 * EXPECT_PROCESS_MAPPING, EXPECT_UNIVERSE_SIZE.
 */
#include <slurm/pmi2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "If available": a weak reference is NULL when the library lacks the symbol. */
#pragma weak PMIX_Ring

static int my_rank = -1;

static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL rank=%d: ", my_rank);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void check_rc(int rc, const char *what)
{
    if (rc != PMI2_SUCCESS)
        fail("%s returned %d", what, rc);
}

static int env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    return v ? atoi(v) : dflt;
}

static void expect_env_str(const char *name, const char *got, const char *what)
{
    const char *want = getenv(name);
    if (want && strcmp(want, got) != 0)
        fail("%s is '%s', expected '%s'", what, got, want);
}

static void put_value(char *buf, size_t len, int rank)
{
    /* '=' and ';' on purpose: libpmi2 escapes ';' as ";;" on the wire. */
    snprintf(buf, len, "value-%d-a=b;c;;d=%d;", rank, rank * 7);
}

int main(int argc, char **argv)
{
    int spawned = -1, size = -1, rank = -1, appnum = -1;
    int rc, found, vallen, i;
    char jobid[256];
    char key[PMI2_MAX_KEYLEN];
    char value[PMI2_MAX_VALLEN];
    char want[PMI2_MAX_VALLEN];
    int local_rank = env_int("MPI_LOCALRANKID", 0);

    rc = PMI2_Init(&spawned, &size, &rank, &appnum);
    check_rc(rc, "PMI2_Init");
    my_rank = rank;
    printf("init rank=%d size=%d appnum=%d spawned=%d\n", rank, size, appnum, spawned);
    fflush(stdout);
    if (!PMI2_Initialized())
        fail("PMI2_Initialized is false after PMI2_Init");
    if (getenv("PMI_RANK") && rank != env_int("PMI_RANK", -1))
        fail("rank %d differs from PMI_RANK", rank);
    if (getenv("PMI_SIZE") && size != env_int("PMI_SIZE", -1))
        fail("size %d differs from PMI_SIZE", size);
    if (size < 1 || rank < 0 || rank >= size)
        fail("rank %d outside size %d", rank, size);
    if (getenv("EXPECT_APPNUM") && appnum != env_int("EXPECT_APPNUM", -1))
        fail("appnum %d, expected %s", appnum, getenv("EXPECT_APPNUM"));
    if (spawned != 0)
        fail("spawned=%d for a job that was not spawned", spawned);

    if (argc > 1 && strcmp(argv[1], "abort") == 0) {
        snprintf(value, sizeof value, "abort; from %d", rank);
        PMI2_Abort(1, value);
        fail("PMI2_Abort returned");
    }

    rc = PMI2_Job_GetId(jobid, sizeof jobid);
    check_rc(rc, "PMI2_Job_GetId");
    printf("jobid=%s\n", jobid);
    expect_env_str("EXPECT_JOBID", jobid, "jobid");

    snprintf(key, sizeof key, "key-%d", rank);
    put_value(value, sizeof value, rank);
    check_rc(PMI2_KVS_Put(key, value), "PMI2_KVS_Put");
    check_rc(PMI2_KVS_Fence(), "PMI2_KVS_Fence");

    for (i = 0; i < size; i++) {
        if (i == rank)
            continue;
        snprintf(key, sizeof key, "key-%d", i);
        put_value(want, sizeof want, i);
        vallen = -1;
        rc = PMI2_KVS_Get(jobid, i, key, value, sizeof value, &vallen);
        check_rc(rc, "PMI2_KVS_Get");
        if (strcmp(value, want) != 0)
            fail("get %s gave '%s', expected '%s'", key, value, want);
        if (vallen != (int)strlen(want))
            fail("get %s gave length %d, expected %zu", key, vallen, strlen(want));
    }

    /* Own key, no job id (sent as an empty "jobid="), source unknown. */
    snprintf(key, sizeof key, "key-%d", rank);
    put_value(want, sizeof want, rank);
    check_rc(PMI2_KVS_Get(NULL, PMI2_ID_NULL, key, value, sizeof value, &vallen),
             "PMI2_KVS_Get(NULL jobid)");
    if (strcmp(value, want) != 0)
        fail("get of own %s gave '%s', expected '%s'", key, value, want);

    rc = PMI2_KVS_Get(jobid, PMI2_ID_NULL, "no-such-key", value, sizeof value, &vallen);
    if (rc == PMI2_SUCCESS)
        fail("get of a missing key succeeded with '%s'", value);

    found = -1;
    rc = PMI2_Info_GetJobAttr("PMI_process_mapping", value, sizeof value, &found);
    check_rc(rc, "PMI2_Info_GetJobAttr(PMI_process_mapping)");
    if (!found)
        fail("PMI_process_mapping not found");
    printf("PMI_process_mapping=%s\n", value);
    expect_env_str("EXPECT_PROCESS_MAPPING", value, "PMI_process_mapping");

    found = -1;
    rc = PMI2_Info_GetJobAttr("universeSize", value, sizeof value, &found);
    check_rc(rc, "PMI2_Info_GetJobAttr(universeSize)");
    if (!found)
        fail("universeSize not found");
    printf("universeSize=%s\n", value);
    expect_env_str("EXPECT_UNIVERSE_SIZE", value, "universeSize");

    found = -1;
    rc = PMI2_Info_GetJobAttr("no-such-attr", value, sizeof value, &found);
    check_rc(rc, "PMI2_Info_GetJobAttr(no-such-attr)");
    if (found)
        fail("no-such-attr found: '%s'", value);

    found = -1;
    rc = PMI2_Info_GetNodeAttr("no-such-node-attr", value, sizeof value, &found, 0);
    check_rc(rc, "PMI2_Info_GetNodeAttr(no-such-node-attr, wait=0)");
    if (found)
        fail("no-such-node-attr found: '%s'", value);

    snprintf(want, sizeof want, "node;value=%s", jobid);
    if (local_rank == 0) {
        check_rc(PMI2_Info_PutNodeAttr("node-attr", want), "PMI2_Info_PutNodeAttr");
    } else {
        found = -1;
        rc = PMI2_Info_GetNodeAttr("node-attr", value, sizeof value, &found, 1);
        check_rc(rc, "PMI2_Info_GetNodeAttr(node-attr, wait=1)");
        if (!found || strcmp(value, want) != 0)
            fail("node-attr found=%d '%s', expected '%s'", found, value, want);
    }

    if (rank == 0) {
        const char *port = "tag#0$port;x=1";
        check_rc(PMI2_Nameserv_publish("svc-pmi2-test", NULL, port), "PMI2_Nameserv_publish");
        value[0] = '\0';
        check_rc(PMI2_Nameserv_lookup("svc-pmi2-test", NULL, value, sizeof value),
                 "PMI2_Nameserv_lookup");
        if (strcmp(value, port) != 0)
            fail("lookup gave '%s', expected '%s'", value, port);
        if (PMI2_Nameserv_lookup("no-such-service", NULL, value, sizeof value) == PMI2_SUCCESS)
            fail("lookup of an unknown service succeeded with '%s'", value);
        check_rc(PMI2_Nameserv_unpublish("svc-pmi2-test", NULL), "PMI2_Nameserv_unpublish");
    }

    if (PMIX_Ring) {
        int ring_rank = -1, ring_size = -1;
        char left[PMI2_MAX_VALLEN], right[PMI2_MAX_VALLEN], want_r[64];
        snprintf(value, sizeof value, "ring-%d", rank);
        check_rc(PMIX_Ring(value, &ring_rank, &ring_size, left, right, PMI2_MAX_VALLEN),
                 "PMIX_Ring");
        printf("ring rank=%d ranks=%d left=%s right=%s\n", ring_rank, ring_size, left, right);
        /* Assumes the server orders the ring by PMI rank, as Hydra-like servers do. */
        if (ring_rank != rank || ring_size != size)
            fail("ring rank %d of %d, expected %d of %d", ring_rank, ring_size, rank, size);
        snprintf(want, sizeof want, "ring-%d", (rank + size - 1) % size);
        snprintf(want_r, sizeof want_r, "ring-%d", (rank + 1) % size);
        if (strcmp(left, want) != 0 || strcmp(right, want_r) != 0)
            fail("ring left '%s' right '%s', expected '%s' '%s'", left, right, want, want_r);
    } else {
        printf("ring unavailable\n");
    }

    check_rc(PMI2_Finalize(), "PMI2_Finalize");
    printf("OK rank=%d\n", rank);
    return 0;
}
