/* MPI hello in the style of OSU's osu_init: time MPI_Init on every rank with
 * CLOCK_MONOTONIC, reduce the maximum to rank 0, which prints
 *   hello from N ranks, max MPI_Init X ms
 * Used by the launch tests and by bench/launch.py (built with the MPICH
 * wheel's mpicc). */
#include <mpi.h>
#include <stdio.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    int rank, size;
    double t0, init_ms, max_ms = 0.0;

    t0 = now_ms();
    MPI_Init(&argc, &argv);
    init_ms = now_ms() - t0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Reduce(&init_ms, &max_ms, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("hello from %d ranks, max MPI_Init %.1f ms\n", size, max_ms);
    MPI_Finalize();
    return 0;
}
