process SCEXPLAIN_TREESHAP {
    tag "$meta.id"
    label 'process_medium'

    conda "${moduleDir}/environment.yml"
    // scexplain is not on bioconda yet: build the containers from environment.yml (Seqera Containers / wave)
    container "${ workflow.containerEngine in ['singularity', 'apptainer'] && !task.ext.singularity_pull_docker_container ?
        'oras://community.wave.seqera.io/library/pip_scexplain:0.2.0' :
        'community.wave.seqera.io/library/pip_scexplain:0.2.0' }"

    input:
    tuple val(meta), path(h5ad)
    tuple val(meta2), path(model)

    output:
    tuple val(meta), path("${task.ext.prefix ?: meta.id}.h5ad"), emit: h5ad
    tuple val("${task.process}"), val('scexplain'), eval('scexplain --version'), emit: versions_scexplain, topic: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    if ("${h5ad}" == "${prefix}.h5ad") error "Input and output names are the same, use \"task.ext.prefix\" to disambiguate!"
    """
    scexplain tree-shap \\
        --input ${h5ad} \\
        --output ${prefix}.h5ad \\
        --model ${model} \\
        --threads ${task.cpus} \\
        ${args}
    """

    stub:
    def args = task.ext.args ?: ''
    def prefix = task.ext.prefix ?: "${meta.id}"
    if ("${h5ad}" == "${prefix}.h5ad") error "Input and output names are the same, use \"task.ext.prefix\" to disambiguate!"
    """
    echo ${args}
    touch ${prefix}.h5ad
    """
}
