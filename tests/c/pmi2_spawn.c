/* Slurm's libpmi2 spawning: the parent (not spawned) spawns argv[0] on 2 processes with
 * PMI2_Job_Spawn and prints the new job's id; each child prints what PMI2_Init told it
 * and its own job id.  Built against -lpmi2 by tests/test_spawn_wire.py. */
#include <slurm/pmi2.h>
#include <stdio.h>

int main(int argc, char **argv) {
    int spawned = 0, size = 0, rank = 0, appnum = 0;
    char jobid[256] = "";
    if (PMI2_Init(&spawned, &size, &rank, &appnum) != PMI2_SUCCESS) {
        printf("FAIL init\n");
        return 1;
    }
    if (PMI2_Job_GetId(jobid, sizeof jobid) != PMI2_SUCCESS) {
        printf("FAIL getid\n");
        return 1;
    }
    if (spawned) {
        printf("child rank=%d size=%d appnum=%d jobid=%s\n", rank, size, appnum, jobid);
    } else {
        const char *cmds[1] = {argv[0]};
        int argcs[1] = {0};
        const char **argvs[1] = {NULL};
        int maxprocs[1] = {2};
        int errors[2] = {-1, -1};
        char child[256] = "";
        int rc = PMI2_Job_Spawn(1, cmds, argcs, argvs, maxprocs, NULL, NULL, 0, NULL,
                                child, sizeof child, errors);
        printf("parent jobid=%s rc=%d child=%s errors=%d,%d\n", jobid, rc, child, errors[0],
               errors[1]);
    }
    fflush(stdout);
    PMI2_Finalize();
    return 0;
}
